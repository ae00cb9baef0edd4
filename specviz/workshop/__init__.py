"""The model workshop: make and measure the models that ship in `assets/models/`.

`train` (the command line), `config`, `text`, `kit` (the training kit), `family`, `continued`, `students`,
`onpolicy`, `corpus`, `unlikelihood`, `parts_training`, `quality`, `card`.

Rule: beside the floors, not on them. It may import engine, models, methods, analysis and bench; nothing outside
the workshop imports it, so the app and the library run without any training code loaded.
"""
