"""GraphSAGE trained on the twin plus the live-fault recordings (graphsage.pt), the tree baseline fitted on
the same data (tree.pkl.gz) and their report (report.json): python -m x0tta6bl4.analysis.train --out here.
Not the analyzer's default (X0TTA6BL4_WEIGHTS_PATH selects it): see docs/monitor-and-analyzer.md."""
