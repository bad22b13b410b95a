"""The shapes world: a synthetic two-object dataset and the tiny BLIP models trained on it.

``blipsearch.shapes.world`` generates scenes, captions and questions;
``blipsearch.shapes.train`` trains the checkpoints shipped in
``blipsearch/builtin/shapes``.
"""
