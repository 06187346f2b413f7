"""The serving artifact: its format, atomic store, reader (`Artifact`), item table, export and updates.

    from towerrec.artifact import Artifact, ArtifactError, export_artifact, add_items, remove_items
"""

from towerrec.artifact.export import export_artifact
from towerrec.artifact.format import ArtifactError
from towerrec.artifact.items import ItemTable
from towerrec.artifact.reader import Artifact
from towerrec.artifact.update import add_items, remove_items, set_metrics

__all__ = ["Artifact", "ArtifactError", "ItemTable", "add_items", "export_artifact", "remove_items", "set_metrics"]
