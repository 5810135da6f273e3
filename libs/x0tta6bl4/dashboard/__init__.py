"""The web dashboard: a live map of the mesh, the MAPE-K cycles, the DAO's proposals and the audit feed
(``python -m x0tta6bl4.dashboard``; ``meshctl up`` starts it and prints its address)."""
