-- Two databases on one PostgreSQL: Prefect's and MLflow's.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
