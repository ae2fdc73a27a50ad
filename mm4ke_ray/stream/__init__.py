"""Lifelong editing in rounds (issue 29): split the edit set into a stream of rounds, run R-SFT +
merge per round on the resident model (each round's base is the previous merged model), keep
every round's delta with its merge settings, evaluate after every round, rebuild round t.

- `mm4ke_ray.stream_config` (outside this package: `config/` imports it): the `stream:` section.
- `rounds`: the edit set split into rounds (by order, by a field, by files).
- `evaluation`: the metrics of one round's model (that round's edits, all edits so far, locality
  against the base, general tasks), teacher-forced and generated.
- `protocol`: the rounds themselves, Ray-free; `rebuild`: round t from the base and kept deltas.
- `resume_rounds`: a killed stream goes on from its kept rounds (the same stream only, digest-checked).
- `curves`: the retention curves as a table and a picture.
"""
