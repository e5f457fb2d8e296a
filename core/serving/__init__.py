"""What leaves the app: classifying photos with a run (predict), exports and their parity (export), demo bundles
served without TensorFlow (bundle, profile), and the stakeholder report (report)."""
