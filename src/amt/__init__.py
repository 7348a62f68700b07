"""Anticipatory Music Transformer (Thickstun et al., TMLR 2024) on Levanter.

Modules, in the order data flows: `vocab` (the token vocabularies), `midifile` and `midi` (MIDI <-> events),
`ops` (event operations), `augment` (the paper's augmentations), `sequences` (filters, anticipation and
packing into training sequences), `sources` and `preprocess` (the job that writes Levanter caches).
"""

__version__ = "0.1.0"
