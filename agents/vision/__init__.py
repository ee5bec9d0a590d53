"""Vision: a small ResNet (torchvision-shaped blocks, torch only) and the procedurally generated shapes task."""
