"""The models: where their files come from, how they load, and what each family computes.

- :mod:`.hub` and :mod:`.loading`: a model spec resolved to a folder, offline errors, fingerprints;
- :mod:`.convert`: original Salesforce and mmpretrain checkpoints to the Hugging Face layout;
- :mod:`.checkpoint`: a loaded checkpoint of any head (device, dtype, tokenizer);
- :mod:`.base`: what every retrieval family implements; :mod:`.blip` and :mod:`.blip2` do;
- :mod:`.retrieval`: loading a retrieval model of either family;
- :mod:`.textquery`: BLIP's text encoder and BLIP-2's Q-Former text path without torch, for query texts;
- :mod:`.explain`: Grad-CAM of the ITM head.

Importing this package imports nothing heavy: torch loads with the modules that need it.
"""
