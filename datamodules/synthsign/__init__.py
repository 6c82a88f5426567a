"""SynthSign internals: lexicon (glosses as motion primitives), grammar (gloss order vs spoken
order), motion (per-frame control curves with co-articulation) and body (a 3-D signer skeleton
rendered to the PT and COCO-WholeBody formats). The entry point is ``datamodules.synthetic``.
"""
