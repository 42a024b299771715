"""The ``entropyprune ecl`` tool: measure a model's layer-wise visual-token entropy and find its collapse layer.

For sampled benchmark images, one prefill each: the image tokens' post-RoPE query and key states of every
layer (from the model's own forward pass), their matrix entropy per layer, per-dataset means and spreads,
the collapse layer by :func:`entropyprune.ecl.detect_collapse`, and the files ``ecl.json``, ``ecl.png``
(paper Figure 2) and ``spectra.png`` (Figure 3).

- :mod:`.capture`: the states of one prompt and their entropy curve;
- :mod:`.samples`: question files, sampling, dataset specs;
- :mod:`.profile`: curves and spectra over samples, summaries;
- :mod:`.plots`: the figures;
- :mod:`.command`: the command line.
"""

from llava.tools.ecl.capture import entropy_profile, layer_states
from llava.tools.ecl.command import add_arguments, cmd_ecl, run_ecl
from llava.tools.ecl.profile import profile_samples, summarize
from llava.tools.ecl.samples import Dataset, Sample, choose_samples, datasets_from_args, load_samples

__all__ = ["Dataset", "Sample", "add_arguments", "choose_samples", "cmd_ecl", "datasets_from_args",
           "entropy_profile", "layer_states", "load_samples", "profile_samples", "run_ecl", "summarize"]
