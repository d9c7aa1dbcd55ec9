"""Group: studies become complete after silence or a forced time; complete studies of a patient form cases."""
