package svidfiles

// SetFault makes the writes of cfg's X.509 files call fault before each
// step (StepLinked and the others), stopping where it returns an error.
func SetFault(cfg *Config, fault func(step string) error) { cfg.fault = fault }

// StepLinked: the set has switched and every path links to it; old
// generations are not removed yet.
const StepLinked = stepLinked
