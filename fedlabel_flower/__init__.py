"""What the Flower apps (server/, clients/) share; loaded from the app directory like them, so it
is not installed (fedlabel itself never imports flwr)."""
