"""Training: the loop (`loop.py`), the recipe (`recipe.py`), divergence (`divergence.py`), each iteration's data (`batches.py`), the
run's bookkeeping (`run.py`), SGD and the lr schedule (`optim.py`), and the paper's Table 2 ablations
(`ablations.py`, `ablation_report.py`).

    from tinymask.training import Recipe, train
"""
from tinymask.training.divergence import TrainingDiverged
from tinymask.training.loop import train
from tinymask.training.recipe import Recipe

__all__ = ["Recipe", "TrainingDiverged", "train"]
