"""The project's Optuna sweeper as a Hydra plugin (Hydra instantiates plugins only from the hydra_plugins
namespace); the implementation is mugpt.studies.optuna_sweeper."""
