"""Class lists.

LISA-18 is the label space of the RP2 / BlurNet LISA-CNN: the 17 names of the
RP2 release's ``mapping.txt`` in that index order, plus ``rightLaneMustTurn``
(the next most frequent LISA class) as index 17, because the papers' network
has 18 outputs.
"""

from typing import Dict, List

LISA_CLASSES: List[str] = [
    "addedLane",
    "keepRight",
    "laneEnds",
    "merge",
    "pedestrianCrossing",
    "school",
    "schoolSpeedLimit25",
    "signalAhead",
    "speedLimit25",
    "speedLimit30",
    "speedLimit35",
    "speedLimit45",
    "speedLimitUrdbl",
    "stop",
    "stopAhead",
    "turnRight",
    "yield",
    "rightLaneMustTurn",
]
LISA_INDEX: Dict[str, int] = {name: i for i, name in enumerate(LISA_CLASSES)}
STOP = LISA_INDEX["stop"]

# GTSRB class ids whose sign is the same sign in the LISA label space (used to
# measure synthetic-to-real transfer; GTSRB 14 = stop, 13 = yield).
GTSRB_TO_LISA: Dict[int, int] = {14: LISA_INDEX["stop"], 13: LISA_INDEX["yield"]}
