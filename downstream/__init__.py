"""Task heads and metrics, plain PyTorch."""
