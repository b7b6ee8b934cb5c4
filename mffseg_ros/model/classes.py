"""Tasks and class names (EndoVis 2017 conventions). Ids are the label values the node publishes."""

TASK_CLASSES = {
    'binary': ('background', 'instrument'),
    'parts': ('background', 'shaft', 'wrist', 'claspers'),
    'type': ('background', 'bipolar_forceps', 'prograsp_forceps', 'large_needle_driver',
             'vessel_sealer', 'grasping_retractor', 'monopolar_curved_scissors', 'other'),
}
NUM_CLASSES = {task: len(names) for task, names in TASK_CLASSES.items()}

PART_SHAFT, PART_WRIST, PART_CLASPERS = 1, 2, 3

# EndoVis 2017 ground-truth folder name fragment -> type id (see data/endovis.py).
ENDOVIS_TYPE_FOLDERS = {
    'Bipolar_Forceps': 1, 'Prograsp_Forceps': 2, 'Large_Needle_Driver': 3, 'Vessel_Sealer': 4,
    'Grasping_Retractor': 5, 'Monopolar_Curved_Scissors': 6, 'Other': 7,
}
# EndoVis 2017 part grey values -> part id.
ENDOVIS_PART_VALUES = {0: 0, 10: 1, 20: 2, 30: 3}

# Display colours (RGB) for type ids, used by every overlay.
TYPE_COLORS = ((0, 0, 0), (255, 80, 80), (80, 200, 255), (255, 220, 60), (120, 255, 120),
               (255, 120, 255), (255, 160, 40), (180, 180, 180))
PART_COLORS = ((0, 0, 0), (60, 120, 255), (255, 200, 0), (255, 40, 40))
