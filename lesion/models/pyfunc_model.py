"""MLflow models-from-code entry: the pyfunc is rebuilt from code, never unpickled."""

import mlflow

from lesion.models.pyfunc import LesionPyfunc

mlflow.models.set_model(LesionPyfunc())
