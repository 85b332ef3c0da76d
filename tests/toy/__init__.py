"""A toy method (an MLP classifier on `digits`) that exercises the shared core in tests."""
