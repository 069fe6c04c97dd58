"""Classic sequential-recommendation baselines for the transfer benchmark: Pop, SASRec and GRU4Rec
(clean PyTorch, trained with full-softmax cross-entropy and early stopping on validation NDCG)."""
