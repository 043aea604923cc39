"""Samples dirs (``sample`` → ``judge`` → ``eval``): the resumable writer, the contact sheet, and
GenEval-style scoring on the shapes world. The manifest format itself is :mod:`sanatool.io.manifest`."""
