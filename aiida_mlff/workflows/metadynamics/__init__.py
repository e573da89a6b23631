"""``mlff.metadynamics``: well-tempered multiple-walker metadynamics along one or two CVs."""
