"""Raw text in: reading shard files of every supported format, cleaning, and quarantining what cannot be used."""
