"""The jitted kernels: pure functions over the model's arrays (options: pinning.model.jit)."""
