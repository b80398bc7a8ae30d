"""The µP doctor: does a model, as built and as it takes its first steps, keep its parametrization's promises?

A coordinate check watches activations; the doctor also measures what was built, so that a wrong Adam ε, a decay
coupled to the wrong learning rate, a readout multiplier on the wrong side of a tied embedding or a depth rule
half applied show up by name. At ≥ 3 widths (and ≥ 3 depths when depth rules are claimed) and ≥ 2 seeds it
measures, per parameter kind (hidden, embedding, vector, readout):

  what is built (probes.py): the weights' RMS, each layer's forward multiplier, the attention logit scale, the
      residual branch multiplier, and the lr, ε and lr·weight_decay in the optimizer's param groups;
  what happens (steps.py): a few optimizer steps' effect on each layer's output, ΔW·x on the same input, the hidden
      activations, the logits' and the residual stream's change;

fits each as an exponent of width (and depth) and holds it against the exponents the parametrization declares
(`promises(family)` on each class in mugpt.core.parametrization). One table, a JSON report, a non-zero exit code when a
promise is broken (report.py).

    from mugpt.studies.doctor import diagnose
    report = diagnose(build, expect="mup")        # build(width, depth) -> (model, optimizer)
    print(report.table()); report.write_json("report.json")

`diagnose_training` runs it on this project's training recipe (scripts/mup_doctor.py).
"""

from mugpt.studies.doctor.core import diagnose, expectation, shakespeare_batches
from mugpt.studies.doctor.probes import default_kind_of
from mugpt.studies.doctor.project import diagnose_training, recipe_build, run_doctor
from mugpt.studies.doctor.report import TOLERANCES, Check, Report

__all__ = ["TOLERANCES", "Check", "Report", "default_kind_of", "diagnose", "diagnose_training", "expectation",
           "recipe_build", "run_doctor", "shakespeare_batches"]
