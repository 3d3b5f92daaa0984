"""What a run shows: README/markdown blocks made from run folders (:mod:`.markdown`, also
``python -m conta_kit.report``), plots (:mod:`.viz`) and the CAM explorer (:mod:`.explore`). Importing this
package loads none of them (plots need matplotlib)."""
