"""The `tinymask` command line: `app.py` (entry point, errors), `parser.py` (options), `commands.py` (what each
command does, through the library).

    tinymask demo     # run every layer forward and backward and gradient-check it, printing a table
    tinymask info     # versions of tinymask and its dependencies, and which kernels this machine can run
    tinymask train    # train the `small` preset on the built-in shapes, report COCO AP on 100 held-out images
    tinymask eval --checkpoint runs/x/best     # COCO box and mask AP of a checkpoint, written to eval.json
    tinymask predict a.jpg b.png --checkpoint runs/x/best     # overlays and COCO results in predictions/
    tinymask ablate                            # the paper's Table 2 ablations in miniature (docs/ablations.md)
"""
from tinymask.cli.app import main

__all__ = ["main"]
