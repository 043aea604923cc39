"""Running a pipeline: loading it on a device, the sampler, prompt encoding, block importance."""
