"""The dashboard's modules; dashboard.py beside this folder wires them (README, "Layout")."""
