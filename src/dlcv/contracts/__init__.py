"""The course's graded commands, apart from training: predictions and scores from a trained checkpoint
(classify: hw1_1.sh / hw1_2.sh, `eval acc`, embed; segment: hw1_3.sh, `segment miou`) and the backbone
export of P2."""
