"""Code for one XLA backend alone, behind one boundary (`cpu`). It imports nothing from the rest
of the package: the model and the sampler choose it by the platform they trace for."""
