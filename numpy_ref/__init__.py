"""numpy_ref: the framework-free ground truth of every model, schedule and sampler."""
