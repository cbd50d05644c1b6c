"""tinygrad_impl: the numpy_ref models ported to tinygrad, with training and fast sampling."""
