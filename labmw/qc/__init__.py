"""Quality control: control materials, recognising control results, Westgard judgement, the patient gate.

The rules themselves are pure (:mod:`labmw.rules.westgard`, :mod:`labmw.rules.qc_gate`); this
package holds the configuration (:mod:`.settings`), recognition (:mod:`.recognize`, pure), the
intake step the pipeline calls (:mod:`.intake`) and the Levey-Jennings chart (:mod:`.chart`).
"""
