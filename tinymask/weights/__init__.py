"""Weights in and out without PyTorch: `torch.save` files (read by `torch_format.py`, written by `torch_export.py`),
tinymask's `.npz` (`npz.py`), old torchvision key spellings (`keys.py`), one loader by extension and a shape check
(`files.py`), and checkpoints, the folders a training run writes (`checkpoint.py`)."""
