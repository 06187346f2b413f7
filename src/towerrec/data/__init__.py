"""Data layer: raw files -> validated tables -> leave-last-out split -> text -> tokens."""
