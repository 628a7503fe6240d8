"""The report (stage `report`): the paper's tables and figures from the pipeline's metrics."""
