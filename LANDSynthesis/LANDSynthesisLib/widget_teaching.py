"""The LAND Synthesis panel's teaching-set section."""

from __future__ import annotations

import slicer

from LANDSynthesisLib.application import qt
from LANDSynthesisLib.logic import (
    GenerationJob,
    LANDSynthesisError,
    formatDuration,
)


class TeachingActionsMixin:
    """LANDSynthesisWidget's teaching-set actions."""

    # ------------------------------------------------------------------ actions: teaching set
    def teachingSetParameters(self) -> dict:
        return {
            "outputDirectory": self.ui.teachingOutputPathLineEdit.currentPath,
            "cases": self.ui.teachingCasesSpinBox.value,
            "modelDirectory": self.selectedModelDirectory() or None,
            "noduleRate": self.ui.teachingNoduleRateSpinBox.value,
            "pairRate": self.ui.teachingPairRateSpinBox.value,
            "textures": self.ui.teachingTexturesLineEdit.text.strip() or None,
            "diameters": self.ui.teachingDiametersLineEdit.text.strip() or None,
            "steps": self.ui.teachingStepsSpinBox.value,
            "seed": self.ui.teachingSeedSpinBox.value,
            **self.guidanceParameters(),
        }

    def onTeachingRun(self) -> None:
        if self.logic.isRunning() or not self.ensureDependencies():
            return
        try:
            self.logic.startTeachingSet(
                self.teachingSetParameters(),
                onProgress=self.onTeachingProgress,
                onFinished=self.onTeachingFinished,
            )
        except LANDSynthesisError as e:
            self.ui.teachingStatusLabel.text = str(e)
            slicer.util.errorDisplay(str(e), windowTitle="LAND: cannot make the teaching set")
            return
        self.ui.teachingOutputPathLineEdit.addCurrentPathToHistory()
        self.ui.teachingProgressBar.setVisible(True)
        self.ui.teachingProgressBar.value = 0
        self.updateButtons()
        self.pollTimer.start()

    def onTeachingCancel(self) -> None:
        self.logic.cancel()
        self.ui.teachingCancelButton.enabled = False

    def onTeachingProgress(self, event: dict) -> None:
        if "warning" in event:
            self.ui.teachingStatusLabel.text = "Warning: " + event["warning"]
            return
        fraction = float(event.get("fraction", 0.0))
        self.ui.teachingProgressBar.value = int(round(1000 * fraction))
        text = event.get("text", "")
        self.ui.teachingProgressBar.setFormat(f"{text}  ({100 * fraction:.0f}%)" if text else "%p%")
        self.ui.teachingStatusLabel.text = text

    def onTeachingFinished(self, job: GenerationJob) -> None:
        self.pollTimer.stop()
        self.ui.teachingProgressBar.setVisible(job.state == GenerationJob.SUCCEEDED)
        self.updateButtons()
        if job.state == GenerationJob.SUCCEEDED:
            folder = str(job.outputDirectory)
            self.ui.teachingStatusLabel.text = (
                f"Teaching set written to {folder} in {formatDuration(job.elapsed)} (SYNTHETIC cases)."
            )
            if self.ui.teachingOpenFolderCheckBox.checked:
                qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(folder))
        elif job.state == GenerationJob.CANCELLED:
            self.ui.teachingStatusLabel.text = (
                "Teaching set cancelled (run it again into the same folder to resume)."
            )
        else:
            self.ui.teachingStatusLabel.text = f"Teaching set failed: {job.error}"
            slicer.util.errorDisplay(
                job.error or "Teaching set failed.", windowTitle="LAND: teaching set failed"
            )
