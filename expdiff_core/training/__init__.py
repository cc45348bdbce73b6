"""Training loops for ExpDiff's own models (plain PyTorch; flows add tracking around them)."""
