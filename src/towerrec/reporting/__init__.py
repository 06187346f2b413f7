"""What a person reads after a run: rankings and curves (`analysis`), figures (`plots`), sweep tables (`sweeps`)."""
