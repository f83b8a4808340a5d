"""A local stand-in for API Gateway (REST) in front of a Lambda function."""
