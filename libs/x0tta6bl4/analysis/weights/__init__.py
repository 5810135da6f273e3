"""Shipped GraphSAGE weights (graphsage.pt) and evaluation report (report.json)."""
