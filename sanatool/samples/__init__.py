"""Samples dirs (``sample`` → ``judge`` → ``eval``): the manifest, the resumable writer, the contact
sheet, and GenEval-style scoring on the shapes world."""
