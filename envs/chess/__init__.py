"""Chess for rlhook: lc0 input planes, the 1858-move policy index, and TorchRL play (``env``)."""
