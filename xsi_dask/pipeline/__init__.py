"""The analysis pipeline as Python functions with typed, validated parameters.

``run`` is the main job (what ``xsi-dask run`` does); ``decompose_store`` and
``nmf_store`` are the ``decompose`` and ``nmf`` commands; ``explore_run`` is
``xsi-dask explore`` (the active-learning experiment, its figures and report); ``analyse_results`` is
``xsi-dask rotate|mcr|ica|segment|quantify|qc`` (analyses added to a results store). The command line only
adapts its flags to these parameter objects.
"""

from ._analyses import AnalysesDone, analyse_results
from ._config import RunConfig, load_run_config, save_run_config
from ._explore import explore_run
from ._params import AnalysesParams, ClusterParams, LayoutParams, NMFParams, SVDParams, ViewParams
from ._run import RunResult, decompose_store, format_info, nmf_components, nmf_store, run

__all__ = [
    "AnalysesDone",
    "AnalysesParams",
    "ClusterParams",
    "LayoutParams",
    "NMFParams",
    "RunConfig",
    "RunResult",
    "SVDParams",
    "ViewParams",
    "analyse_results",
    "decompose_store",
    "explore_run",
    "format_info",
    "load_run_config",
    "nmf_components",
    "nmf_store",
    "run",
    "save_run_config",
]
