"""The PyTorch face of tritium's kernels: dispatch, autograd, custom ops, references."""
