"""diffusers pipelines of var_hf (installed as `var_hf.pipelines`)."""

from ..scheduling_var import VARScaleScheduler, VARSchedulerOutput
from .pipeline_var import VARPipeline, VARPipelineOutput

__all__ = ["VARPipeline", "VARPipelineOutput", "VARScaleScheduler", "VARSchedulerOutput"]
