"""Static checks of the LANDSynthesis module files (no Slicer needed): .ui file, icon, CMakeLists.txt."""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "LANDSynthesis"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LANDSynthesis.ui"
MODULE_FILE = MODULE_DIR / "LANDSynthesis.py"
WIDGET_CLASS = re.compile(r"^(Q[A-Z]\w*|ctk[A-Z]\w*|qMRML[A-Z]\w*|qSlicer[A-Z]\w*)$")
QT_CLASSES = {  # standard Qt widgets the module uses (anything else must be declared as a custom widget)
    "QCheckBox",
    "QComboBox",
    "QDoubleSpinBox",
    "QLabel",
    "QLineEdit",
    "QPlainTextEdit",
    "QProgressBar",
    "QPushButton",
    "QSpinBox",
    "QTableWidget",
    "QWidget",
}


def _ui():
    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget")}
    custom = {c.findtext("class"): c.findtext("extends") for c in root.iter("customwidget")}
    return root, widgets, custom


def test_every_ui_name_used_by_the_module_exists_with_a_widget_class():
    _, widgets, custom = _ui()
    used = set(re.findall(r"\bui\.([A-Za-z_]\w*)", MODULE_FILE.read_text(encoding="utf-8")))
    assert len(used) > 30, "the widget should use the .ui's widgets through self.ui"
    missing = sorted(used - set(widgets))
    assert not missing, f"self.ui.<name> without a widget of that name in {UI_FILE.name}: {missing}"
    for name in sorted(used):
        cls = widgets[name]
        assert WIDGET_CLASS.match(cls), f"{name} has class {cls!r}, not a Qt/CTK/MRML widget class"
        assert cls in QT_CLASSES or cls in custom, f"{name}: {cls} is neither standard Qt nor declared custom"


def test_ui_structure():
    root, widgets, custom = _ui()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "LANDSynthesis"
    assert len(widgets) == len(list(root.iter("widget"))), "widget names must be unique"
    for cls, base in custom.items():
        assert WIDGET_CLASS.match(cls) and base, cls
    # every MRML widget gets the scene from the top-level widget
    connected = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    mrml = {n for n, c in widgets.items() if c.startswith(("qMRML", "qSlicer")) and n != "LANDSynthesis"}
    assert mrml <= connected, f"MRML widgets without a scene connection: {sorted(mrml - connected)}"
    combos = {
        n: w
        for n, w in ((w.get("name"), w) for w in root.iter("widget"))
        if widgets[n] == "qMRMLNodeComboBox"
    }
    for name, w in combos.items():
        types = [
            s.text for p in w.findall("property") if p.get("name") == "nodeTypes" for s in p.iter("string")
        ]
        assert types, f"{name} has no nodeTypes"
    for required in ("generateButton", "cancelButton", "progressBar", "statusLabel", "noduleTable"):
        assert required in widgets
    teaching = root.find(".//widget[@name='teachingCollapsibleButton']")
    assert teaching is not None and teaching.get("class") == "ctkCollapsibleButton"
    inside = {w.get("name") for w in teaching.iter("widget")}
    for required in (
        "teachingCasesSpinBox",
        "teachingOutputPathLineEdit",
        "teachingRunButton",
        "teachingCancelButton",
        "teachingProgressBar",
        "teachingStatusLabel",
    ):
        assert required in inside, required


def test_icon_is_a_128_px_png():
    data = (MODULE_DIR / "Resources" / "Icons" / "LANDSynthesis.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)
    assert zlib.crc32(data[12 : 16 + length]) == struct.unpack(">I", data[16 + length : 20 + length])[0]


def test_cmake_lists_module_files():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "set(MODULE_NAME LANDSynthesis)" in text
    for script in sorted((MODULE_DIR / "LANDSynthesisLib").glob("*.py")):
        assert f"LANDSynthesisLib/{script.name}" in text, f"CMakeLists.txt does not install {script.name}"
    resources = re.search(r"set\(MODULE_PYTHON_RESOURCES(.*?)\)", text, re.S).group(1).split()
    assert len(resources) == 2
    for resource in resources:
        path = MODULE_DIR / resource.replace("${MODULE_NAME}", "LANDSynthesis")
        assert path.is_file(), f"CMakeLists.txt lists {resource}, which does not exist"
    assert (MODULE_DIR / "LANDSynthesisLib" / "__init__.py").is_file()
    assert (MODULE_DIR / "land" / "__init__.py").is_file()


def test_module_classes_follow_the_template():
    """Module, Widget and Test as Slicer's template has them (the widget's mask and teaching-set sections and
    the self test live in LANDSynthesisLib, the module file stays small)."""
    import ast

    text = MODULE_FILE.read_text(encoding="utf-8")
    bases = {
        n.name: [ast.unparse(b) for b in n.bases] for n in ast.parse(text).body if isinstance(n, ast.ClassDef)
    }
    assert bases["LANDSynthesis"] == ["ScriptedLoadableModule"]
    assert {"ScriptedLoadableModuleWidget", "VTKObservationMixin"} <= set(bases["LANDSynthesisWidget"])
    assert "from LANDSynthesisLib.selftest import LANDSynthesisTest" in text
    selftest = (MODULE_DIR / "LANDSynthesisLib" / "selftest.py").read_text(encoding="utf-8")
    assert "class LANDSynthesisTest(ScriptedLoadableModuleTest)" in selftest
    assert "LANDSynthesisLogic" in text and 'loadUI(self.resourcePath("UI/LANDSynthesis.ui"))' in text
    assert len(text.splitlines()) <= 600


def test_guidance_widgets():
    """The guidance widgets sit with the sampling options, start on the model's recommendation (scale and mode
    disabled), span the engine's range, and the widget keeps them in the parameter node both ways."""
    from land.interface.contract import MAX_GUIDANCE

    root, widgets, _ = _ui()
    model = root.find(".//widget[@name='modelCollapsibleButton']")
    inside = {w.get("name"): w for w in model.iter("widget")}
    expected = {
        "guidanceFromModelCheckBox": "QCheckBox",
        "guidanceSpinBox": "QDoubleSpinBox",
        "guidanceModeComboBox": "QComboBox",
    }
    for name, cls in expected.items():
        assert name in inside and widgets[name] == cls, name

    def prop(name, key):
        element = inside[name].find(f"property[@name='{key}']")
        return None if element is None else element[0].text

    assert prop("guidanceFromModelCheckBox", "checked") == "true"
    assert prop("guidanceFromModelCheckBox", "text") == "Use the model's recommended guidance"
    assert float(prop("guidanceSpinBox", "minimum")) == 0.0
    assert float(prop("guidanceSpinBox", "maximum")) == MAX_GUIDANCE
    assert float(prop("guidanceSpinBox", "singleStep")) == 0.5
    for name in ("guidanceSpinBox", "guidanceModeComboBox"):
        assert prop(name, "enabled") == "false", f"{name} must start disabled (the checkbox starts checked)"
        assert prop(name, "toolTip"), name

    text = MODULE_FILE.read_text(encoding="utf-8")
    to_node = text[text.index("def updateParameterNodeFromGUI") :]
    to_node = to_node[: to_node.index("\n    def ")]
    from_node = text[text.index("def updateGUIFromParameterNode") :]
    from_node = from_node[: from_node.index("\n    def ")]
    for key, widget in (
        ("GuidanceFromModel", "guidanceFromModelCheckBox"),
        ("Guidance", "guidanceSpinBox"),
        ("GuidanceMode", "guidanceModeComboBox"),
    ):
        assert f'node.SetParameter("{key}"' in to_node and f"self.ui.{widget}" in to_node, key
        assert f'node.GetParameter("{key}")' in from_node and f"self.ui.{widget}" in from_node, key
    for widget in ("guidanceSpinBox", "guidanceModeComboBox"):
        assert f"self.ui.{widget}.enabled" in from_node, f"{widget} is not enabled/disabled with the checkbox"
