"""Live views of the model's insides (JupyterLab + ipywidgets), built from small pure functions.

compute.py: the numbers (attention_probs, logit_lens, rope_scores, nucleus_distribution, decode_steps), tested in
tests/test_views.py; figures.py: the static matplotlib figures, which the notebooks show where no kernel runs;
widgets.py: one function per view that builds its sliders, so that a notebook cell stays one line.
"""
from .compute import (
    attention_probs,
    decode_steps,
    logit_lens,
    nucleus_distribution,
    residual_stream,
    rope_scores,
    rotate_pair,
)
from .figures import (
    attention_figure,
    decode_figure,
    logit_lens_figure,
    rope_figure,
    sampling_figure,
    token_label,
)
from .widgets import attention_explorer, generation_view, logit_lens_view, rope_view, sampling_view
