"""Small network architectures written in this project (no torchvision: trap T2)."""
