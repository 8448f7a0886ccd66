"""MLflow models-from-code entry: the pyfunc is rebuilt from code, never unpickled."""

import mlflow

from lesion.serving import LesionPyfunc

mlflow.models.set_model(LesionPyfunc())
