"""tinymask: Mask R-CNN (He, Gkioxari, Dollár, Girshick, ICCV 2017) from scratch in NumPy, every backward by hand."""
__version__ = "0.1.0"
